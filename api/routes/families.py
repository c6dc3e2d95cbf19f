"""GET /v1/families, GET /v1/families/{family}."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from api.auth import User
from api.schemas import FamilyOut, ParamOut, Problem, TermOut
from metalic.conditions import TERMS
from metalic.families import FAMILIES, Family, get_family
from metalic.jobs import SolveRequest

router = APIRouter(tags=["families"], responses={401: {"model": Problem}})


def family_or_404(name: str) -> Family:
    try:
        return get_family(name)
    except ValueError as exc:
        raise HTTPException(404, str(exc)) from None


def describe(f: Family) -> FamilyOut:
    defaults = SolveRequest.model_fields
    return FamilyOut(
        name=f.name,
        equation=f.equation,
        coords=list(f.coords),
        params=[
            ParamOut(name=p.name, lo=p.lo, hi=p.hi, default=p.default, description=p.description) for p in f.params
        ],
        subdomains=f.default_decomposition.n_subdomains,
        interfaces=len(f.default_decomposition.interfaces),
        terms=[TermOut(bit=t.bit, name=t.name, formula=t.formula) for t in TERMS],
        default_budget={"adam": defaults["adam"].default, "lbfgs": defaults["lbfgs"].default},
        default_points={
            "collocation": defaults["collocation"].default,
            "boundary": defaults["boundary"].default,
            "interface": f.interface_points,
        },
        recommended=dict(f.recommended),
        links={"solve": f"/v1/families/{f.name}/solve", "recommendation": f"/v1/families/{f.name}/recommendation"},
    )


@router.get("/families", response_model=list[FamilyOut])
def list_families(_: User) -> list[FamilyOut]:
    """Every family: parameters with bounds and defaults, interface terms, default budgets."""
    return [describe(f) for f in FAMILIES.values()]


@router.get("/families/{family}", response_model=FamilyOut, responses={404: {"model": Problem}})
def one_family(family: str, _: User) -> FamilyOut:
    return describe(family_or_404(family))
