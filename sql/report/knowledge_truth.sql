-- Data of the report's knowledge-truth figure: per ceiling pair and threshold T, pooled over
-- seeds, the precision of the paper's Strong-Known & Weak-Unknown proxy against the world's
-- truth (the knowledge probe) and the chance precision, from analysis_knowledge_truth.
-- Run: w2s sql sql/report/knowledge_truth.sql --artifacts <root>
select
    weak_model,
    strong_model,
    threshold,
    cast(sum(both) as double) / nullif(sum(proxy_area), 0) as precision,
    cast(sum(both) as double) / nullif(sum(true_area), 0) as recall,
    cast(sum(true_area) as double) / nullif(sum(pairs), 0) as chance_precision
from analysis_knowledge_truth
group by weak_model, strong_model, threshold
order by weak_model, strong_model, threshold
