//! Wire types shared by the node agent and the appliance.
//!
//! Empty until the node agent registers with the appliance (issue 3); it exists now so the
//! workspace has its final shape.
