"""dnanet: a decentralized AI compute network (nodes, QueryMixers, Validator)."""

__version__ = "0.1.0"
