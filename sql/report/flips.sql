-- App. L data of the report: each conflict cell's flips over the four knowledge areas, summed
-- over seeds, from analysis_flip_breakdown.
-- Run: w2s sql sql/report/flips.sql --artifacts <root>
select
    weak_model,
    strong_model,
    objective,
    alpha,
    sum(sk_wk) as sk_wk,
    sum(sk_wuk) as sk_wuk,
    sum(suk_wk) as suk_wk,
    sum(suk_wuk) as suk_wuk
from analysis_flip_breakdown
group by weak_model, strong_model, objective, alpha
order by weak_model, strong_model, objective, alpha
