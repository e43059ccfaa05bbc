"""Arithmetic precision on CPU: what the processor supports, and turning a loaded model into it.

Three precisions are known: ``"fp32"`` (the reference), ``"bf16"`` (the decoder's linear layers
in bf16, everything else fp32; native only on CPUs with AVX-512 BF16 or AMX, elsewhere PyTorch
emulates it, slower than fp32) and ``"int8"`` (dynamic quantization of the decoder's linear layers:
int8 weights, activations quantized per call, through the fbgemm / x86 kernels of AVX2 and newer
CPUs). ``"auto"`` picks the fastest precision whose quality was measured within 0.005 nDCG@10 of fp32
for the shipped model (docs/benchmarks.md "Cheaper head scoring" and "bf16 linear layers on a CPU with
native bf16") among those this CPU supports, else fp32.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "int8")

# Fastest first; only precisions measured within 0.005 nDCG@10 of fp32 on the shipped model belong
# here: bf16 linear layers on four development cells (eval/results/bf16_dev_cpu.json), not int8 (6.4
# points lost at top-20, eval/results/head_pruning_step962_cpu.json). "auto" takes the first one the
# CPU supports natively.
AUTO_ORDER: tuple[str, ...] = ("bf16", "fp32")


def cpu_supports(precision: str) -> bool:
    """Whether this CPU runs ``precision`` natively (fp32 always does)."""
    if precision == "fp32":
        return True
    if precision == "bf16":
        check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        return bool(check()) if check is not None else False
    if precision == "int8":
        engines = torch.backends.quantized.supported_engines
        capability = torch.backends.cpu.get_cpu_capability()
        return ("x86" in engines or "fbgemm" in engines) and capability in ("AVX2", "AVX512")
    raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def check_precision(precision: str | None) -> None:
    """Refuse a precision name that is not one of :data:`PRECISIONS` (None means ``"auto"``)."""
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def resolve_precision(precision: str | None) -> str:
    """The precision to run on this CPU: ``"auto"`` / None chooses; an unsupported one falls back to fp32.

    The fallback warns: an emulated precision would be silently slower than fp32.
    """
    check_precision(precision)
    if precision is None or precision == "auto":
        return next((p for p in AUTO_ORDER if cpu_supports(p)), "fp32")
    if not cpu_supports(precision):
        logger.warning(
            "this CPU has no native %s kernels (capability %s): running fp32 instead",
            precision,
            torch.backends.cpu.get_cpu_capability(),
        )
        return "fp32"
    return precision


class Bf16Linear(nn.Module):
    """A linear layer that multiplies in bf16 and answers in its input's dtype.

    Only the matrix products change precision: the residual stream, norms, attention and the LM head
    stay fp32 around it. Rounding the residual stream to bf16 as well (``model.to(torch.bfloat16)``)
    moved the head readout about twice as much for no measurable speed (the products dominate).

    Example:
        >>> layer = Bf16Linear(nn.Linear(4, 2))
        >>> layer(torch.ones(3, 4)).dtype
        torch.float32
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(linear.weight.detach().to(torch.bfloat16), requires_grad=False)
        bias = linear.bias
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(torch.bfloat16), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x.to(torch.bfloat16), self.weight, self.bias).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def _bf16_linears(decoder: nn.Module) -> None:
    """Swap every ``nn.Linear`` under ``decoder`` for a :class:`Bf16Linear`, in place."""
    for parent in list(decoder.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, Bf16Linear(child))


def apply_cpu_precision(
    model: torch.nn.Module, precision: str, int8_modules: Sequence[str] | None = None
) -> torch.nn.Module:
    """Return ``model`` in ``precision`` (a resolved one: fp32 / bf16 / int8) for CPU inference.

    bf16 runs the decoder stack's ``nn.Linear`` layers in bf16 (:class:`Bf16Linear`); int8 quantizes
    them dynamically (all of them, or those whose name ends with one of ``int8_modules``, e.g.
    ``("gate_proj", "up_proj")``). Either way the LM head stays fp32, so the logits head scoring and
    decoding read keep full precision.

    Example:
        >>> lm = apply_cpu_precision(lm, resolve_precision("int8"))   # doctest: +SKIP
    """
    if precision not in ("fp32", "bf16", "int8"):
        raise ValueError(f"apply_cpu_precision needs fp32, bf16 or int8, got {precision!r}")
    model.float()  # in place: what the reduced-precision layers hand back to is fp32
    if precision == "fp32":
        return model
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    if precision == "bf16":
        _bf16_linears(decoder)
        return model
    from torch.ao.quantization import quantize_dynamic

    spec: set | dict = {torch.nn.Linear}
    if int8_modules is not None:
        from torch.ao.quantization import default_dynamic_qconfig

        names = [n for n, m in decoder.named_modules() if isinstance(m, torch.nn.Linear)]
        spec = {n: default_dynamic_qconfig for n in names if n.endswith(tuple(int8_modules))}
        if not spec:
            raise ValueError(f"int8_modules {list(int8_modules)} name none of the decoder's linear layers")
    quantize_dynamic(decoder, spec, dtype=torch.qint8, inplace=True)  # swaps modules in place
    return model
