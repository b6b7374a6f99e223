from app.callbacks.monitor import ThroughputMonitor

__all__ = ["ThroughputMonitor"]
