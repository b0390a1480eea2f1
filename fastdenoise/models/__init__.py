"""Reference architectures whose state-dict keys and shapes match the official releases, so the
official checkpoints load with ``strict=True``; :func:`load_official` infers which one a
checkpoint belongs to and loads it."""

from .dncnn import DnCNN
from .ffdnet import FFDNet
from .invdn import InvBlockExp, InvNet
from .loading import ARCHS, build, infer_arch, load_official
from .mwcnn import MWCNN
from .mprnet import MPRNet
from .ridnet import RIDNet
from .nafnet import Baseline, BaselineLocal, NAFNet, NAFNetLocal
from .restormer import Restormer

__all__ = ["DnCNN", "FFDNet", "InvNet", "InvBlockExp", "MWCNN", "ARCHS", "build", "infer_arch",
           "load_official"]
__all__ += ["NAFNet", "NAFNetLocal", "Baseline", "BaselineLocal"]
__all__ += ["RIDNet", "MPRNet"]
__all__ += ["Restormer"]
