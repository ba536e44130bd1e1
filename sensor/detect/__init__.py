"""Detection: signature pack -> one Hyperscan stream database -> per-exchange scanner -> verdict."""
