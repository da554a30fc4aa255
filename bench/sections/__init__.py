"""The report's sections, a module per part of the run; each function takes the run's results and returns
the section's Markdown lines (none when the run did not measure it). :func:`bench.report.render` orders them."""
