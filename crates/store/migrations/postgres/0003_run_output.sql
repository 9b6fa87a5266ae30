-- Run output in its own append-only table: one row per chunk an agent sent, so storing a chunk
-- never rewrites the run's record. `seq` is the agent's chunk number (exactly once per run);
-- `bytes` is the chunk's length, for keeping each run's tail within its cap. The run's record
-- keeps what the control plane adds (notes, the masked rest at the end) and output stored
-- before this table existed.
CREATE TABLE run_output (
    run_id  TEXT    NOT NULL,
    seq     BIGINT  NOT NULL,
    bytes   BIGINT  NOT NULL,
    data    TEXT    NOT NULL,
    PRIMARY KEY (run_id, seq)
);
