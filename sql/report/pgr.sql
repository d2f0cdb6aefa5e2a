-- The report's table of the performance gap recovered (Burns et al.), from analysis_pgr,
-- models in capability order (analysis_model_order), then objective, alpha and seed.
-- Run: w2s sql sql/report/pgr.sql --artifacts <root>
select p.*
from analysis_pgr p
left join analysis_model_order w on w.model = p.weak_model
left join analysis_model_order s on s.model = p.strong_model
order by w.rank, s.rank, p.weak_model, p.strong_model,
    case p.objective when 'none' then 0 when 'explicit' then 1 when 'implicit' then 2
        when 'adaptive' then 3 else 4 end,
    p.objective, p.alpha, p.seed
