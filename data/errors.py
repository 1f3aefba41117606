"""The error raised for every problem with the training data."""


class DatasetError(ValueError):
    """A data set is missing, corrupt or does not fit the request.

    The message names what was being read, what is wrong and how to fix it.
    """
