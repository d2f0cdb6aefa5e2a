-- The report's table of knowledge areas per weak/strong pair (Eq. 7), from
-- analysis_knowledge_areas, models in capability order (analysis_model_order).
-- Run: w2s sql sql/report/areas.sql --artifacts <root>
select
    a.weak_model, a.strong_model, a.seed, a.threshold, a.pairs, a.sk_wk, a.sk_wuk, a.suk_wk,
    a.suk_wuk, a.sk_wuk_share
from analysis_knowledge_areas a
left join analysis_model_order w on w.model = a.weak_model
left join analysis_model_order s on s.model = a.strong_model
order by w.rank, s.rank, a.weak_model, a.strong_model, a.seed
