"""gitpack: model files that carry, pinned in git, the exact code and parameters that built them.

    info = gitpack.save(model, "model.gitpack", params={"lr": 3e-4})
    model = gitpack.load("model.gitpack")      # runs the code it was saved with
    gitpack.inspect("model.gitpack")           # what built it, without unpickling
    with gitpack.capture(): model = build()    # record the constructor arguments of repo objects
    gitpack.diff("a.gitpack", "b.gitpack")     # parameters, environment and code that differ
    gitpack.verify("model.gitpack")            # every digest, the commit that vouches for it, its signature
    gitpack.scan("model.gitpack")              # what the trust gate thinks of the pickle, without running it

Importing gitpack never imports torch; the layers are described in ARCHITECTURE.md.
"""

from ._version import __version__
from .api import SaveInfo, diff, inspect, load, log, save, scan, verify
from .capturing import capture, sources
from .errors import GitpackError, GitpackWarning

sources.install()  # from here on, each of the user's modules is recorded as imported (pinned if edited later)

__all__ = [
    "GitpackError", "GitpackWarning", "SaveInfo", "__version__", "capture", "diff", "inspect", "load", "log", "save",
    "scan", "verify",
]
