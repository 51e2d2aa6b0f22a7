# Lets `pytest` import the repo's flat modules (sophia, model, train, ...) from the repo root, and splits the
# suite in two tiers:
#   python -m pytest            the fast tier (the default): everything not marked slow, a few minutes
#   python -m pytest -m slow    the slow tier: torchrun / FSDP end-to-end runs, the comparison study, the
#                               fused (torch.compile) parametrizations
#   python -m pytest --all      both


def pytest_addoption(parser):
    parser.addoption("--all", action="store_true", help="run the slow tier too (by default only tests not "
                                                        "marked slow run; -m slow runs only the slow ones)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--all") or config.getoption("markexpr"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


def pytest_report_header(config):
    if not (config.getoption("--all") or config.getoption("markexpr")):
        return "fast tier: tests marked slow are deselected (python -m pytest -m slow runs them, --all runs both)"
