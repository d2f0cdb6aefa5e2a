-- The report's table of the explicit objective's alpha sweep (App. J), from
-- analysis_alpha_sweep.
-- Run: w2s sql sql/report/alpha.sql --artifacts <root>
select weak_model, strong_model, alpha, seed, run_id, accuracy, flips, deception_score
from analysis_alpha_sweep
order by weak_model, strong_model, alpha, seed
