"""The arm: which interface terms a training switches on, or one network over the whole domain.

An ``Arm`` is the one value type for an arm everywhere in the code; every other form is made from
it and parsed back into it in this module:

| form            | example            | where                                                   |
|-----------------|--------------------|---------------------------------------------------------|
| ``label``       | ``"u,flux"``       | users, the CLI, REST answers, JSON files, the dashboard |
| ``bits``        | ``"100010000"``    | REST answers (bit i = term i; ``single-domain``: a tenth bit) |
| ``index``       | ``17``             | the database (one integer per arm), the bandit's arm set |
| ``features()``  | ``(1, 0, ..., 0)`` | the GP's arm inputs: nine term bits, the single-network bit, the recipe bits |
| ``loss_weights``| ``(1., 0., ...)``  | the trainer's per-term weights (one network: all zero)   |

``Arm.parse`` reads all of them (and the 9- or 10-tuples that older files and rows hold).

The index space: term subsets are 0..511 (bit i = term i), the single network is 512, and each
training-recipe bit (``RECIPE_FLAGS``: ``causal``) multiplies the space by two above that:
``index = base + 513 * recipe``; the label gets ``+causal``. The indices of the arms without recipe
bits never change. A study learns the recipe bits it is given (``arm_set``), none by default.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache

from metalic.conditions import N_TERMS, TERM_NAMES, TERMS

SINGLE_NETWORK_LABEL = "single-domain"
# Training-recipe bits an arm can carry (a bandit may choose them). ``causal``: causal weights on
# the residual in the Adam phase (``metalic.pinn.causal``; a time-dependent family).
RECIPE_FLAGS: tuple[str, ...] = ("causal",)
SWITCHES = (*TERM_NAMES, SINGLE_NETWORK_LABEL, *RECIPE_FLAGS)  # what ``Arm.switches`` says is on
N_BASE = 2**N_TERMS + 1  # 512 term subsets and the single network
N_BASE_FEATURES = N_TERMS + 1  # the GP's inputs of an arm without recipe bits
N_FEATURES = N_BASE_FEATURES + len(RECIPE_FLAGS)


@dataclass(frozen=True, order=True)
class Arm:
    """``terms``: bit i set = interface term ``TERMS[i]`` on (0..511); ``single``: one network over
    the whole domain, no split and so no interface terms; ``recipe``: bit j = ``RECIPE_FLAGS[j]``."""

    terms: int = 0
    single: bool = False
    recipe: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.terms < 2**N_TERMS:
            raise ValueError(f"an arm's term mask is 0..{2**N_TERMS - 1}, got {self.terms}")
        if self.single and self.terms:
            raise ValueError(f"the {SINGLE_NETWORK_LABEL} arm has no interface terms")
        if not 0 <= self.recipe < 2 ** len(RECIPE_FLAGS):
            raise ValueError(f"unknown recipe bits {self.recipe}")

    # ---- reading -------------------------------------------------------------------------------
    @classmethod
    def parse(cls, spec: str | Sequence[int] | int | Arm, field: str | None = None) -> Arm:
        """An arm from its label (``"u,flux"``, ``"all"``, ``"none"``, ``"single-domain"``), its
        bits (``"100010000"``, ten characters for the stored single-network form), a sequence of 9
        or 10 zeros and ones, or its index. ValueError names the bad element (and ``field``)."""
        try:
            return _parse(spec)
        except ValueError as exc:
            if field is None:
                raise
            raise ValueError(f"{field}: {exc}") from None

    @classmethod
    def from_index(cls, index: int) -> Arm:
        if not 0 <= index < N_BASE * 2 ** len(RECIPE_FLAGS):
            raise ValueError(f"an arm index is 0..{N_BASE * 2 ** len(RECIPE_FLAGS) - 1}, got {index}")
        base, recipe = index % N_BASE, index // N_BASE
        return cls(0, True, recipe) if base == N_BASE - 1 else cls(base, False, recipe)

    @classmethod
    def of_terms(cls, names: Iterable[str]) -> Arm:
        mask = 0
        for name in names:
            if name not in TERM_NAMES:
                raise ValueError(f"unknown interface term {name!r} (terms: {', '.join(TERM_NAMES)})")
            mask |= 1 << TERM_NAMES.index(name)
        return cls(mask)

    # ---- its forms -----------------------------------------------------------------------------
    @property
    def label(self) -> str:
        """``u,flux``, ``none`` for no term, ``single-domain`` for one network."""
        if self.single:
            text = SINGLE_NETWORK_LABEL
        else:
            text = ",".join(t.name for t in TERMS if self.terms >> t.bit & 1) or "none"
        return "+".join([text, *self.recipe_flags])

    @property
    def bits(self) -> str:
        """Nine characters, bit i = term i; the single network is ``0000000001``."""
        return "".join(str(b) for b in self.term_mask) + ("1" if self.single else "")

    @property
    def index(self) -> int:
        return (N_BASE - 1 if self.single else self.terms) + N_BASE * self.recipe

    @property
    def term_mask(self) -> tuple[int, ...]:
        """The nine term bits (all zero for one network)."""
        return tuple(self.terms >> i & 1 for i in range(N_TERMS))

    @property
    def loss_weights(self) -> tuple[float, ...]:
        """The trainer's weight per interface term [9]."""
        return tuple(float(b) for b in self.term_mask)

    @property
    def base(self) -> Arm:
        """The same arm without recipe bits (what an L-BFGS phase takes: the recipe is the Adam
        phase's)."""
        return Arm(self.terms, self.single)

    def features(self) -> tuple[float, ...]:
        """The GP's inputs for this arm [N_FEATURES]: nine term bits, the single-network bit, then
        the recipe bits."""
        recipe = tuple(float(self.recipe >> j & 1) for j in range(len(RECIPE_FLAGS)))
        return (*self.loss_weights, float(self.single), *recipe)

    @property
    def switches(self) -> tuple[int, ...]:
        """0/1 per name of ``SWITCHES``: the nine terms, one network, the recipe bits."""
        return tuple(int(v) for v in self.features())

    @property
    def recipe_flags(self) -> tuple[str, ...]:
        return tuple(name for j, name in enumerate(RECIPE_FLAGS) if self.recipe >> j & 1)

    @property
    def quantities(self) -> frozenset[str]:
        """The per-side interface quantities this arm's terms need."""
        return _quantities(self.terms)

    def __str__(self) -> str:
        return self.label


NONE = Arm(0)
ALL = Arm(2**N_TERMS - 1)
SINGLE = Arm(0, True)
# The fixed arms a learned policy is measured against (issue 17, the benchmarks): the flux and
# solution continuity the literature starts from, no term, every term, one network.
BASELINE_LABELS: tuple[str, ...] = ("flux", "u,flux", "u", "none", "all", SINGLE_NETWORK_LABEL)


def _parse(spec: str | Sequence[int] | int | Arm) -> Arm:
    if isinstance(spec, Arm):
        return spec
    if isinstance(spec, bool):
        raise ValueError(f"not an arm: {spec!r}")
    if isinstance(spec, int):
        return Arm.from_index(spec)
    if isinstance(spec, str):
        text, *recipe = spec.strip().lower().split("+")
        base = _parse_text(text.strip())
        return Arm(base.terms, base.single, _recipe(recipe)) if recipe else base
    return _parse_bits(list(spec))


def _parse_text(text: str) -> Arm:
    if text in ("all", "*"):
        return ALL
    if text == "":
        raise ValueError("an arm names interface terms, or none, all or single-domain; got nothing")
    if text == "none":
        return NONE
    if text in (SINGLE_NETWORK_LABEL, "single"):
        return SINGLE
    if len(text) in (N_TERMS, N_TERMS + 1) and set(text) <= {"0", "1"}:
        return _parse_bits([int(c) for c in text])
    return Arm.of_terms(n.strip() for n in text.split(","))


def _parse_bits(bits: list) -> Arm:
    if len(bits) not in (N_TERMS, N_TERMS + 1, N_FEATURES):
        raise ValueError(f"an arm has {N_TERMS} bits, got {len(bits)}")
    if any(b not in (0, 1) for b in bits):
        raise ValueError("arm bits must be 0 or 1")
    mask = sum(int(b) << i for i, b in enumerate(bits[:N_TERMS]))
    single = len(bits) > N_TERMS and bits[N_TERMS] == 1
    if single and mask:
        raise ValueError(f"the {SINGLE_NETWORK_LABEL} arm has no interface terms")
    recipe = sum(int(b) << j for j, b in enumerate(bits[N_TERMS + 1 :]))
    return Arm(mask, single, recipe)


def _recipe(names: list[str]) -> int:
    bits = 0
    for name in (n.strip() for n in names):
        if name not in RECIPE_FLAGS:
            known = ", ".join(RECIPE_FLAGS) or "none yet"
            raise ValueError(f"unknown recipe bit {name!r} (recipe bits: {known})")
        bits |= 1 << RECIPE_FLAGS.index(name)
    return bits


@cache
def _quantities(terms: int) -> frozenset[str]:
    return frozenset(q for t in TERMS if terms >> t.bit & 1 for q in t.needs)


def needed_quantities(arms: Iterable[Arm]) -> frozenset[str]:
    """Side quantities that the union of ``arms`` needs."""
    out: set[str] = set()
    for arm in arms:
        out |= arm.quantities
    return frozenset(out)


@cache
def all_arms() -> tuple[Arm, ...]:
    """Every arm without recipe bits, in index order: the 512 term subsets, then one network."""
    return tuple(Arm.from_index(i) for i in range(N_BASE))


@cache
def arm_set(recipe_flags: tuple[str, ...] = ()) -> tuple[Arm, ...]:
    """The arms of a study that learns ``recipe_flags`` (a prefix of ``RECIPE_FLAGS``), in index
    order: the 513 arms without recipe bits, then each of them with each recipe."""
    if recipe_flags != RECIPE_FLAGS[: len(recipe_flags)]:
        raise ValueError(f"recipe bits must be a prefix of {RECIPE_FLAGS}, got {recipe_flags}")
    return tuple(Arm.from_index(i) for i in range(N_BASE * 2 ** len(recipe_flags)))


def design_arms() -> tuple[Arm, ...]:
    """A warm-up design that shows a GP each term's effect alone beside the baselines (13 arms):
    no term, each of the nine terms alone, then ``BASELINE_LABELS`` not yet among them."""
    arms = [NONE, *(Arm(1 << i) for i in range(N_TERMS))]
    return tuple(arms + [a for a in map(Arm.parse, BASELINE_LABELS) if a not in arms])


def warmup_labels(given: Sequence[str]) -> tuple[str, ...]:
    """A campaign's ``warmup_arms`` as asked (CLI ``--warmup-arms``, REST ``warmup_arms``): arm
    labels as given, or ``["design"]`` for ``design_arms()``."""
    if list(given) == ["design"]:
        return tuple(arm.label for arm in design_arms())
    return tuple(given)


@cache
def split_arms() -> tuple[Arm, ...]:
    """The 512 term subsets (the arms an L-BFGS phase of a split training can take)."""
    return all_arms()[:-1]
