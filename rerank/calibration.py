"""Relevance probabilities from the head readout, comparable across prompts and queries.

The head readout ``s = logit(yes) - logit(no)`` at a passage's end is read *relative to the passages
sharing its prompt*: a prompt of weak passages lifts its best one. A calibration maps each prompt's
readouts to P(relevant | query, passage) with a logistic model that sees the readout and the prompt's
mean readout (the per-prompt reference)::

    p_i = sigmoid(a * s_i + c * mean_j(s_j) + b)        (j over the passages of s_i's prompt)

``a``, ``c`` and ``b`` are fitted (binary cross-entropy, a small L2 penalty) on judged lists of a
development collection that is neither training nor test data. With ``a > 0`` the order inside one
prompt is unchanged; across prompts (chunks of a long list, or queries) the probabilities are the
comparable quantity. The file is tied to the weights it was fitted for by their sha256: a calibration
fitted for other weights is refused.

A readout means something else in each kind of prompt (``PROMPT_KINDS``), because the passages beside
it were chosen differently: a ``chunk`` of a long list holds a mix of first-stage ranks, the ``final``
prompt of a tournament holds the best of the whole list, a ``single`` prompt holds a list that fits
one window (usually a first-stage top 20). Each kind may carry its own ``(a, c, b)``; a kind without
its own set uses the chunk set.

Example:
    >>> cal = HeadCalibration(weight=1.0, prompt_mean_weight=-0.5, bias=0.0, fingerprint="x")
    >>> [round(p, 3) for p in cal.probabilities([2.0, 0.0])]
    [0.818, 0.378]
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from rerank.models import model_folder, sha256_file

CALIBRATION_FILE = "calibration.json"
PROMPT_KINDS = ("chunk", "final", "single")
WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors")


def weights_fingerprint(folder: str | os.PathLike) -> str:
    """sha256 of the weights in a model folder (the LoRA adapter, else the full model file)."""
    folder = Path(folder)
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return sha256_file(folder / name)
    raise FileNotFoundError(f"{folder} holds none of {WEIGHT_FILES}: nothing to tie a calibration to")


def sigmoid(x: float) -> float:
    """The logistic function, without overflow for large negative ``x``."""
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _check_parameters(name: str, weight, prompt_mean_weight, bias) -> None:
    for what, value in (("weight", weight), ("prompt_mean_weight", prompt_mean_weight), ("bias", bias)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"calibration {name}{what} must be a finite number, got {value!r}")
    if weight <= 0:
        raise ValueError(f"calibration {name}weight must be positive (it keeps each prompt's order), got {weight}")


@dataclass(frozen=True)
class HeadCalibration:
    """``p = sigmoid(weight * s + prompt_mean_weight * mean(s over the prompt) + bias)``, per prompt kind.

    ``weight``, ``prompt_mean_weight`` and ``bias`` are the chunk set; ``final_prompt`` and
    ``single_prompt`` are optional ``(weight, prompt_mean_weight, bias)`` sets for those kinds.
    """

    weight: float
    prompt_mean_weight: float
    bias: float
    fingerprint: str = field(metadata={"help": "sha256 of the weights this calibration was fitted for."})
    fitted_on: str = field(default="", metadata={"help": "What it was fitted on (collection, depth, lists)."})
    layout: str = field(
        default="consecutive",
        metadata={
            "help": "Chunk layout of the prompts it was fitted on (rerank.long_lists.CHUNK_LAYOUTS): the prompt "
            "mean means something else in a prompt of consecutive ranks than in one of interleaved ranks."
        },
    )
    final_prompt: tuple[float, float, float] | None = field(
        default=None,
        metadata={"help": "(weight, prompt_mean_weight, bias) for a tournament's final prompt; None: the chunk set."},
    )
    single_prompt: tuple[float, float, float] | None = field(
        default=None,
        metadata={"help": "(weight, prompt_mean_weight, bias) for a list that fits one prompt; None: the chunk set."},
    )

    def __post_init__(self):
        from rerank.long_lists import CHUNK_LAYOUTS

        if self.layout not in CHUNK_LAYOUTS:
            raise ValueError(f"calibration layout must be one of {CHUNK_LAYOUTS}, got {self.layout!r}")
        _check_parameters("", self.weight, self.prompt_mean_weight, self.bias)
        for kind in ("final", "single"):
            name = f"{kind}_prompt"
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 3:
                raise ValueError(f"calibration {name} must be (weight, prompt_mean_weight, bias), got {value!r}")
            _check_parameters(f"{name} ", *value)
            object.__setattr__(self, name, tuple(float(v) for v in value))  # JSON gives a list

    def parameters(self, kind: str = "chunk") -> tuple[float, float, float]:
        """``(weight, prompt_mean_weight, bias)`` applied to a prompt of ``kind`` (one of PROMPT_KINDS)."""
        if kind not in PROMPT_KINDS:
            raise ValueError(f"prompt kind must be one of {PROMPT_KINDS}, got {kind!r}")
        own = None if kind == "chunk" else getattr(self, f"{kind}_prompt")
        return own if own is not None else (self.weight, self.prompt_mean_weight, self.bias)

    def probabilities(self, prompt_scores: Sequence[float], kind: str = "chunk") -> list[float]:
        """Probabilities for the readouts of ONE prompt of ``kind`` (the mean is taken over them)."""
        a, c, b = self.parameters(kind)
        if not prompt_scores:
            return []
        mean = math.fsum(prompt_scores) / len(prompt_scores)
        return [sigmoid(a * s + c * mean + b) for s in prompt_scores]

    def with_kind(self, kind: str, fitted: HeadCalibration) -> HeadCalibration:
        """This calibration with ``fitted``'s parameters for prompts of ``kind`` (its chunk set, for
        ``"chunk"``, replaces this one's and drops the other kinds: they were fitted beside the old one)."""
        if fitted.fingerprint != self.fingerprint:
            raise ValueError("the new parameters were fitted for other weights than this calibration")
        if kind == "chunk":
            return fitted
        params = (fitted.weight, fitted.prompt_mean_weight, fitted.bias)
        self.parameters(kind)  # validates the kind
        note = f"{self.fitted_on}; {kind} prompts: {fitted.fitted_on}" if fitted.fitted_on else self.fitted_on
        return replace(self, fitted_on=note, **{f"{kind}_prompt": params})

    @classmethod
    def fit(
        cls,
        prompts: Sequence[Sequence[float]],
        labels: Sequence[Sequence[int]],
        fingerprint: str,
        fitted_on: str = "",
        l2: float = 1e-3,
        layout: str = "consecutive",
    ) -> HeadCalibration:
        """Fit on per-prompt readouts and 0/1 relevance labels (Newton's method on the 3 parameters)."""
        import torch

        if len(prompts) != len(labels) or any(len(s) != len(y) for s, y in zip(prompts, labels)):
            raise ValueError("prompts and labels must have the same shape (one label per readout)")
        rows = [(s, sum(p) / len(p), y) for p, ys in zip(prompts, labels) if p for s, y in zip(p, ys)]
        if not rows or len({y for *_, y in rows}) < 2:
            raise ValueError("calibration needs both relevant and non-relevant passages")
        x = torch.tensor([[s, m, 1.0] for s, m, _ in rows], dtype=torch.float64)
        y = torch.tensor([float(y) for *_, y in rows], dtype=torch.float64)
        theta = torch.zeros(3, dtype=torch.float64)
        penalty = torch.diag(torch.tensor([l2, l2, 0.0], dtype=torch.float64)) * len(rows)
        for _ in range(50):
            p = torch.sigmoid(x @ theta)
            grad = x.T @ (p - y) + penalty @ theta
            hess = (x * (p * (1 - p))[:, None]).T @ x + penalty + 1e-9 * torch.eye(3, dtype=torch.float64)
            step = torch.linalg.solve(hess, grad)
            theta = theta - step
            if step.abs().max() < 1e-10:
                break
        a, c, b = (float(v) for v in theta)
        return cls(weight=a, prompt_mean_weight=c, bias=b, fingerprint=fingerprint, fitted_on=fitted_on, layout=layout)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike, fingerprint: str | None = None) -> HeadCalibration:
        """Read a calibration file; with ``fingerprint``, refuse one fitted for other weights."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            cal = cls(**data)
        except (json.JSONDecodeError, TypeError) as exc:
            raise ValueError(f"{path}: not a head calibration file ({exc})") from None
        if fingerprint is not None and cal.fingerprint != fingerprint:
            raise ValueError(
                f"{path} was fitted for other weights (sha256 {cal.fingerprint[:12]}..., these are "
                f"{fingerprint[:12]}...): refit it with scripts/fit_calibration.py or pass calibration=False"
            )
        return cal


def calibration_for_model(model, calibration, scoring: str) -> HeadCalibration | None:
    """The calibration ``Reranker.from_pretrained`` applies: ``None`` the model folder's file if any (for
    ``scoring="head"``), ``False`` none, a path that file, checked against the folder's weights."""
    if calibration is False:
        return None
    if calibration is True:
        raise ValueError("calibration must be None (the folder's file if any), False or a path, not True")
    folder = model_folder(model)
    folder = folder if folder is not None and folder.is_dir() else None
    path = Path(calibration) if calibration is not None else folder and folder / CALIBRATION_FILE
    if path is None or (calibration is None and not path.is_file()):
        return None
    if not path.is_file():
        raise FileNotFoundError(f"calibration file {path} does not exist")
    if scoring != "head":
        if calibration is None:
            return None  # the folder's calibration belongs to its head scores
        raise ValueError(f"a head calibration applies to scoring='head' only, not scoring={scoring!r}")
    if folder is None:
        raise ValueError(f"calibration {path}: the model {model!r} has no weights folder to check it against")
    return HeadCalibration.load(path, fingerprint=weights_fingerprint(folder))


def expected_calibration_error(probs: Sequence[float], labels: Sequence[int], bins: int = 10) -> float:
    """ECE over ``bins`` equal-width bins: sum over bins of |bin| / n * |mean(p) - mean(y)|.

    >>> expected_calibration_error([0.9, 0.9, 0.1, 0.1], [1, 0, 0, 0])
    0.25
    """
    if len(probs) != len(labels) or not probs:
        raise ValueError("probs and labels must be non-empty and of the same length")
    groups: list[list[int]] = [[] for _ in range(bins)]
    for i, p in enumerate(probs):
        groups[min(bins - 1, int(p * bins))].append(i)
    total = 0.0
    for g in groups:
        if g:
            gap = abs(sum(probs[i] for i in g) / len(g) - sum(labels[i] for i in g) / len(g))
            total += len(g) / len(probs) * gap
    return round(total, 10)
