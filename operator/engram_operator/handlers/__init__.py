"""kopf handlers, one module per concern; importing engram_operator.main registers them all."""
