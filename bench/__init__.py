"""streamd benchmarks: `python -m bench [--quick] [PART ...]` writes bench/RESULTS.md.

Every process under test runs on its own (the simulator, the daemon, each reference
client), so no two share a GIL; phases run one after another on a shared 2-core machine,
so the report compares ratios measured in the same run rather than absolute figures.
"""
