"""Clinical workflows on top of the node: records, consent, audit, FHIR, proofs.

Node side: :mod:`node.clinical.reads` (what a signed record or audit read
returns), :mod:`node.clinical.keyrelease` (the custodian's automatic key
release), :mod:`node.clinical.index` (the per-patient listings the ledger
state does not keep), and the blobs a node lacks: :mod:`node.clinical.blobs`
(late gossip) and :mod:`node.clinical.blobfetch` with its driver
:mod:`node.clinical.blobfetch_service` (fetched from peers by committed hash).
Client side: :mod:`node.clinical.client` (the Python client library),
:mod:`node.clinical.fhir` (validation and FHIR export),
:mod:`node.clinical.verify` (offline proof checks) and :mod:`node.clinical.cli`
(the ``medledger`` commands).
"""
