-- The report's table of the explicit objective's alpha sweep (App. J), from
-- analysis_alpha_sweep, models in capability order (analysis_model_order).
-- Run: w2s sql sql/report/alpha.sql --artifacts <root>
select a.weak_model, a.strong_model, a.alpha, a.seed, a.run_id, a.accuracy, a.flips,
    a.deception_score
from analysis_alpha_sweep a
left join analysis_model_order w on w.model = a.weak_model
left join analysis_model_order s on s.model = a.strong_model
order by w.rank, s.rank, a.weak_model, a.strong_model, a.alpha, a.seed
