"""Linear gradient transforms (GaLore, random sketches, Kronecker) and their dual adapters.

  projections  S for one parameter as factors P, Q (never the r x d matrix); specs and seeding
  low_rank     optax transform: project -> inner transform -> back-project, refresh, microbatches
  adapters     θ = θ0 + Sᵀφ on plain pytrees (and NNX models through nnx.split/merge)
  lora         standard LoRA factors on the same adapter trees; stacked adapters; orbax save/load
  accounting   optimizer-state bytes by group
  factory      make_optimizer / make_adapter_setup from the `optim` config section
"""

from lloglin.optim.accounting import format_state_bytes
from lloglin.optim.accounting import optimizer_state_bytes
from lloglin.optim.adapters import apply_adapters
from lloglin.optim.adapters import init_adapters
from lloglin.optim.adapters import loss_on_adapters
from lloglin.optim.adapters import merge_adapters
from lloglin.optim.adapters import nnx_adapter_loss
from lloglin.optim.adapters import no_projections
from lloglin.optim.adapters import refresh_adapters
from lloglin.optim.factory import ADAPTER_NAMES
from lloglin.optim.factory import DEFAULTS
from lloglin.optim.factory import NAMES
from lloglin.optim.factory import AdapterSetup
from lloglin.optim.factory import OptimizerInfo
from lloglin.optim.factory import make_adapter_setup
from lloglin.optim.factory import make_optimizer
from lloglin.optim.factory import make_schedule
from lloglin.optim.lora import LoRA
from lloglin.optim.lora import LoRASpec
from lloglin.optim.lora import adapter_at
from lloglin.optim.lora import init_lora
from lloglin.optim.lora import is_lora
from lloglin.optim.lora import load_adapters
from lloglin.optim.lora import lora_specs
from lloglin.optim.lora import save_adapters
from lloglin.optim.lora import stack_adapters
from lloglin.optim.low_rank import LowRankState
from lloglin.optim.low_rank import is_refresh_step
from lloglin.optim.low_rank import low_rank_projection
from lloglin.optim.low_rank import refresh_index
from lloglin.optim.low_rank import reset_projected_state
from lloglin.optim.projections import Projection
from lloglin.optim.projections import ProjectionSpec
from lloglin.optim.projections import back_project
from lloglin.optim.projections import back_project_tree
from lloglin.optim.projections import is_projected
from lloglin.optim.projections import make_projection
from lloglin.optim.projections import make_projections
from lloglin.optim.projections import path_str
from lloglin.optim.projections import project
from lloglin.optim.projections import project_tree
from lloglin.optim.projections import projection_key
from lloglin.optim.projections import specs_by_rule
