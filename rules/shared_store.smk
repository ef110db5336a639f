# Several hosts sharing one results store through a storage plugin (profiles/shared-fs): check the store is
# reachable before anything runs, and refuse to overwrite a target's complete artifacts already in the store.
from portcheck.workflow.shared_store import overwrite_message, prefix_problem  # noqa: E402

_prefix_problem = prefix_problem(
    workflow.storage_settings.default_storage_provider,
    workflow.storage_settings.default_storage_prefix,
)
if _prefix_problem:
    raise WorkflowError(_prefix_problem)


def storage_conflicts(jobs):
    """Per-target jobs about to run whose outputs already exist in the shared store."""
    conflicts = []
    for job in jobs:
        target = job.wildcards_dict.get("target")
        existing = [f.storage_object.query for f in job.output if f.is_storage and f.storage_object.exists()]
        if target and existing:
            conflicts.append((job.rule.name, target, existing))
    return conflicts


onstart:
    if workflow.storage_settings.default_storage_provider and not config.get("overwrite"):
        _conflicts = storage_conflicts(workflow.dag.needrun_jobs())
        if _conflicts:
            raise WorkflowError(overwrite_message(_conflicts))
