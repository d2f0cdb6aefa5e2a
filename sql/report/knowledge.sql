-- The knowledge figure's data: for every pretrained model and world entity (by how often the
-- corpus mentions it), whether the probe says the model knows it (`knowledge`, w2s pretrain).
-- Run: w2s sql sql/report/knowledge.sql --artifacts <root>
select model_id, rank, knows from knowledge order by model_id, rank
