"""The kernel side of grading: probes that run inside the sandbox, and their wire format.

Grading splits every hidden test in two. The *probe* (:mod:`dpm_probe.runtime`) runs in the
student's sandboxed kernel: it calls the student's functions on inputs it is given and sends
back plain data (:mod:`dpm_probe.wire`: safetensors, never pickle). The *judge*
(``course.judges``) runs in the grading process outside the sandbox: it draws the inputs,
computes the references and the known mistakes, and decides. This package imports nothing
from ``course``; the sandbox mounts it read-only, without the judges.
"""

from dpm_probe.runtime import MIME, describe, execute, serve
from dpm_probe.wire import Limits, Node, Tensor, WireError, decode, encode

__all__ = ["MIME", "serve", "execute", "describe", "Limits", "Node", "Tensor", "WireError",
           "encode", "decode"]
