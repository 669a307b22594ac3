"""gitpack: model files that carry, pinned in git, the exact code and parameters that built them.

    info = gitpack.save(model, "model.gitpack", params={"lr": 3e-4})
    model = gitpack.load("model.gitpack")      # runs the code it was saved with
    gitpack.inspect("model.gitpack")           # what built it, without unpickling
"""

from .api import SaveInfo, __version__, inspect, load, log, save
from .errors import GitpackError

__all__ = ["GitpackError", "SaveInfo", "__version__", "inspect", "load", "log", "save"]
