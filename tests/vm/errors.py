class VmError(Exception):
    """The throwaway VM could not be built or booted, or the guest did not report back."""
