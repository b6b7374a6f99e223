from app.callbacks.mixture_feedback import MixtureFeedback
from app.callbacks.monitor import ThroughputMonitor

__all__ = ["MixtureFeedback", "ThroughputMonitor"]
