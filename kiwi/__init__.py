"""kiwi: the PostgreSQL v3 wire protocol, sans-IO (mirrors Odyssey third_party/kiwi)."""
