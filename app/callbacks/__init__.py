from sprout.callbacks.monitor import ThroughputMonitor
from sprout.mixing import MixtureFeedback  # the module registers its own; listed here with the other callbacks

__all__ = ["MixtureFeedback", "ThroughputMonitor"]
