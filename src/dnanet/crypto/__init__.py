"""Cryptography for dnanet: hashing, secp256k1 identities and EIP-712 signatures, ECVRF."""
