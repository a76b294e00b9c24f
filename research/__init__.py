"""Research: load bars, backtest, sweep, walk-forward, check for lookahead, bridge to vectorbt."""
