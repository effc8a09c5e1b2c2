"""PBFT consensus: a sans-IO replica, its Trio service, WAL and wire messages.

Public surface (everything else is internal):

* :class:`Replica` (``consensus.core``) -- the state machine; inputs in, effects out.
* :class:`ConsensusService` / :class:`Transport` (``consensus.service``) -- the Trio driver.
* :class:`Application` / :class:`Verdict` (``consensus.app``) -- what the ledger implements.
* :class:`ValidatorSet`, :class:`CommitCertificate` -- quorum rules and finality proofs.
* :class:`FileWAL` / :class:`MemoryWAL` -- the write-ahead log of own votes.
"""

from consensus.app import Application, Verdict, VerdictKind
from consensus.core import ConsensusConfig, Replica, ReplicaStatistics, TimerKind
from consensus.errors import (
    LocalProtocolError,
    RemoteProtocolError,
    SafetyViolationError,
    WALCorruptionError,
)
from consensus.messages import CommitCertificate, Envelope
from consensus.service import ConsensusService, ServiceStatistics, Transport
from consensus.validators import ValidatorSet
from consensus.wal import FileWAL, MemoryWAL, WalStore

__all__ = [
    "Application",
    "CommitCertificate",
    "ConsensusConfig",
    "ConsensusService",
    "Envelope",
    "FileWAL",
    "LocalProtocolError",
    "MemoryWAL",
    "RemoteProtocolError",
    "Replica",
    "ReplicaStatistics",
    "SafetyViolationError",
    "ServiceStatistics",
    "TimerKind",
    "Transport",
    "ValidatorSet",
    "Verdict",
    "VerdictKind",
    "WALCorruptionError",
    "WalStore",
]
