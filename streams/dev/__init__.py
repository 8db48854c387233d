"""Development tools on top of everything: simulator, demo, tail, synthetic windows."""
