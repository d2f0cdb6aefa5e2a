-- The report's table of the performance gap recovered (Burns et al.), from analysis_pgr.
-- Run: w2s sql sql/report/pgr.sql --artifacts <root>
select * from analysis_pgr
