from app.callbacks.monitor import ThroughputMonitor
from app.mixing import MixtureFeedback  # the module registers its own; listed here with the other callbacks

__all__ = ["MixtureFeedback", "ThroughputMonitor"]
