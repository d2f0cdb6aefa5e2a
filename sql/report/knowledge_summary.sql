-- The report's table of what each pretrained model knows: entities, how many the probe says
-- it knows, and the mean probe margin (`knowledge`, w2s pretrain).
-- Run: w2s sql sql/report/knowledge_summary.sql --artifacts <root>
select
    model_id,
    count(*) as entities,
    sum(case when knows then 1 else 0 end) as known,
    avg(case when knows then 1.0 else 0.0 end) as share_known,
    avg(margin) as mean_margin
from knowledge
group by model_id
order by model_id
