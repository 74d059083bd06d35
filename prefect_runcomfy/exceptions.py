"""Every error this package raises, from one tree (`RunComfyError`).

The tree lives in `prefect_runcomfy.api.exceptions`; this module is where users import it:

```python
from prefect_runcomfy.exceptions import RunComfyError, SubmitOutcomeUnknownError
```
"""

from prefect_runcomfy.api.exceptions import *  # noqa: F403
from prefect_runcomfy.api.exceptions import __all__  # noqa: F401
