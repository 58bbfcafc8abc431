"""Layer 5, tools: the `guard` command line, `guard calibrate`, `guard evaluate` and the offline
scans. They compose the layers below; nothing below imports them."""
