"""Schema of conf/accounting/: the facility roll-up assumptions."""

from __future__ import annotations

import math
from dataclasses import dataclass

from optimizer.config.checks import require


@dataclass
class AccountingConfig:
    """Facility roll-up assumptions, printed next to every derived figure."""

    pue: float = 1.2
    grid_gco2_per_kwh: float = 400.0
    price_per_kwh: float = 0.15
    currency: str = "USD"

    def __post_init__(self) -> None:
        require(1.0 <= self.pue < math.inf, "accounting.pue", f"is {self.pue}", "a finite PUE >= 1, e.g. 1.2")
        require(
            0 <= self.grid_gco2_per_kwh < math.inf,
            "accounting.grid_gco2_per_kwh",
            f"is {self.grid_gco2_per_kwh}",
            "a finite figure >= 0, e.g. 400",
        )
        require(
            0 <= self.price_per_kwh < math.inf,
            "accounting.price_per_kwh",
            f"is {self.price_per_kwh}",
            "a finite price >= 0, e.g. 0.15",
        )
