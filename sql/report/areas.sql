-- The report's table of knowledge areas per weak/strong pair (Eq. 7), from
-- analysis_knowledge_areas.
-- Run: w2s sql sql/report/areas.sql --artifacts <root>
select
    weak_model, strong_model, seed, threshold, pairs, sk_wk, sk_wuk, suk_wk, suk_wuk,
    sk_wuk_share
from analysis_knowledge_areas
order by weak_model, strong_model, seed
