"""Schema of conf/accounting/: the facility roll-up assumptions."""

from __future__ import annotations

from dataclasses import dataclass

from optimizer.config.checks import require, require_finite


@dataclass
class AccountingConfig:
    """Facility roll-up assumptions, printed next to every derived figure."""

    pue: float = 1.2
    grid_gco2_per_kwh: float = 400.0
    price_per_kwh: float = 0.15
    currency: str = "USD"

    def __post_init__(self) -> None:
        require_finite(self, "accounting")
        require(self.pue >= 1.0, "accounting.pue", f"is {self.pue} < 1", "a PUE is >= 1, e.g. 1.2")
        require(self.grid_gco2_per_kwh >= 0, "accounting.grid_gco2_per_kwh", "is negative", "e.g. 400")
        require(self.price_per_kwh >= 0, "accounting.price_per_kwh", "is negative", "e.g. 0.15")
