"""AI work as both sides see it: the OpenAI wire format and the model backends.

Nodes serve these backends; the mixers' gateway speaks the same wire format and checks
canaries against the same reference models. Neither side imports the other: both import this.
"""
