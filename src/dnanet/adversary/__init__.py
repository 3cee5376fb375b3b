"""The adversarial devnet: cheating nodes, Byzantine mixers and a griefer, beside honest
roles, to show that none of them out-earns, sabotages or overloads the honest ones.

=========================  ==================================================================
``dnanet.adversary.roles``    the parts by name, and what the design does about each cheat
``dnanet.adversary.nodes``    cheating node daemons (lazy, replayer, gpu-liar, relay, swapper,
                              selective, echo-fast)
``dnanet.adversary.mixers``   a Byzantine mixer with several faulty parts at once
``dnanet.adversary.griefer``  a stranger attacking a node's sessions and AI endpoints and the
                              mixers' routes
``dnanet.adversary.devnet``   the devnets that build them (``dnanet devnet --scenario
                              adversarial``, embedded or every role its own process)
``dnanet.adversary.proof``    the figures of ``bench/adversary.py``, from the Validator and
                              the chain
=========================  ==================================================================

``python -m dnanet.adversary`` runs a dishonest node or mixer as its own process (the devnet
over ``--chain anvil``). Nothing here is used by an honest role.
"""
