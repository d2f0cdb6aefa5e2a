-- Fig. 19/20 data of the report: per conflict run, the test pairs its no-conflict reference
-- gets right with the two ceilings' confidences and whether the run flips them, from
-- analysis_confidence_scatter.
-- Run: w2s sql sql/report/scatter.sql --artifacts <root>
select weak_model, strong_model, objective, alpha, seed, weak_conf, strong_conf, flipped
from analysis_confidence_scatter
order by weak_model, strong_model, objective, alpha, seed, split_index
