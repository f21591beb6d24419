"""One place that imports TensorFlow in TF1 (graph) mode.

Every module of the project does ``from models.tf_compat import tf`` (or
reads ``tf_compat.tf`` at first use: module ``__getattr__`` below) so that
v2 behaviour is disabled exactly once, before any graph is built, and the
start-up chatter is silenced unless the user asks for it
(TF_CPP_MIN_LOG_LEVEL=0): the deprecation warnings, and the two lines that
TensorFlow's C++ libraries print while loading ("WARNING: All log messages
before absl::InitializeLog() ..." and "oneDNN custom operations are on ..."),
which ignore TF_CPP_MIN_LOG_LEVEL. Without them, a user error of any stage is
exactly one line on stderr.
"""
import os
import re
import sys
import tempfile
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_QUIET = os.environ["TF_CPP_MIN_LOG_LEVEL"] != "0"
# Lines the C++ side prints at load time, before absl logging is initialised.
_STARTUP_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to "
    r"STDERR|I\d{4} [\d:. ]+\d+ port\.cc:\d+\] oneDNN custom operations are on\..*)$")


def _import_tensorflow() -> Any:
    """Imports tensorflow; when quiet, drops the known start-up lines from
    stderr (fd 2) and passes every other line through."""
    if not _QUIET:
        import tensorflow
        return tensorflow
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all
        import tensorflow
        return tensorflow
    capture = tempfile.TemporaryFile()
    try:
        os.dup2(capture.fileno(), 2)
        try:
            import tensorflow
        finally:
            os.dup2(saved, 2)
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace")
            kept = [line for line in text.splitlines(keepends=True)
                    if not _STARTUP_NOISE.match(line.rstrip("\r\n"))]
            if kept:
                os.write(2, "".join(kept).encode("utf-8", "replace"))
    finally:
        os.close(saved)
        capture.close()
    return tensorflow


def _import_without_keras() -> Any:
    """_import_tensorflow with Keras held off: tensorflow/__init__.py imports
    Keras 3 eagerly (keras.src.optimizers, which imports matplotlib.pyplot),
    about a second of CPU in every process, and skips it when the import
    fails. The project builds no Keras layer. Only the import is affected:
    afterwards `import keras` works as before (tf.keras stays unused)."""
    if "keras" in sys.modules:        # imported already: nothing to save
        return _import_tensorflow()
    # import keras: ImportError (a None entry blocks an import; typeshed types the values
    # as modules only).
    sys.modules["keras"] = None  # type: ignore[assignment]
    try:
        return _import_tensorflow()
    finally:
        del sys.modules["keras"]


# Declared, not bound: the first read goes through __getattr__ below.
tf: Any
saveable_object: Any


def _load() -> None:
    """Imports TensorFlow (quietly, without Keras) and disables v2 behaviour."""
    global tf, saveable_object
    tf2 = _import_without_keras()
    if _QUIET:
        tf2.get_logger().setLevel("ERROR")
    import tensorflow.compat.v1 as tf_v1
    tf_v1.disable_v2_behavior()
    # The TF1 Saver's extension point (training.precision), imported only now
    # that TensorFlow is loaded quietly.
    from tensorflow.python.training.saving import saveable_object as saveable
    tf, saveable_object = tf_v1, saveable


def __getattr__(name: str) -> Any:
    """`tf` and `saveable_object`, loaded at first use (PEP 562 module
    attribute): ``from models.tf_compat import tf`` loads TensorFlow at once,
    while a module that needs it in a few functions only (training.checkpoints,
    whose JSON helpers the report and the CSV checks use) imports
    ``models.tf_compat`` and reads ``tf_compat.tf`` there, so that those
    tools start without TensorFlow's seconds of import CPU."""
    if name in __all__:
        _load()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["saveable_object", "tf"]
