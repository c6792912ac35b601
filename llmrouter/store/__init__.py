"""The SQL store: API keys, fair-use state, balances, the ledger and provider totals."""

from .key_store import SECRET_PREFIX, hash_secret
from .records import (
    Admission,
    AdmissionKind,
    ChatMessageRecord,
    ConnectionRecord,
    KeyRecord,
    LedgerEntry,
    ProviderTotal,
    QuotaDefaults,
    SessionRecord,
    Settlement,
    SweptCall,
    Ticket,
    UsageRow,
    VideoTaskRecord,
)
from .store import Store

__all__ = [
    "SECRET_PREFIX",
    "Admission",
    "AdmissionKind",
    "ChatMessageRecord",
    "ConnectionRecord",
    "KeyRecord",
    "LedgerEntry",
    "ProviderTotal",
    "QuotaDefaults",
    "SessionRecord",
    "Settlement",
    "Store",
    "SweptCall",
    "Ticket",
    "UsageRow",
    "VideoTaskRecord",
    "hash_secret",
]
