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
        # -0.0 passes `>= 0` and printed "-0 gCO2/kWh" (and "-0.000" costs): it means 0
        for name in ("pue", "grid_gco2_per_kwh", "price_per_kwh"):
            if getattr(self, name) == 0:
                setattr(self, name, 0.0)
        require(self.pue >= 1.0, "accounting.pue", f"is {self.pue} < 1", "a PUE is >= 1, e.g. 1.2")
        require(self.grid_gco2_per_kwh >= 0, "accounting.grid_gco2_per_kwh", "is negative", "e.g. 400")
        # grids run from ~1.5 (hydro: Quebec) to ~1100 g/kWh (lignite); below 1 is kg/kWh given
        # for g/kWh. 0 stays: a carbon-free supply. The price has no such floor or ceiling: 150
        # per kWh is a slip in USD (per MWh) and a tariff in KRW.
        grid = self.grid_gco2_per_kwh
        require(
            not 0 < grid < 1,
            "accounting.grid_gco2_per_kwh",
            f"is {grid:g} g/kWh, below any grid's (about 10-1000 g/kWh)",
            f"give grams per kWh: {grid:g} kg/kWh is {grid * 1000:g} g/kWh (0 for a carbon-free supply)",
        )
        require(self.price_per_kwh >= 0, "accounting.price_per_kwh", "is negative", "e.g. 0.15")
        # printed after every cost figure: blank left the cost without a unit, a pipe split its cell
        require(
            bool(self.currency.strip()) and not {"|", "\n"} & set(self.currency),
            "accounting.currency",
            f"is {self.currency!r}: the report prints it after every cost",
            "a currency code or symbol without '|' or a line break, e.g. USD or EUR",
        )
