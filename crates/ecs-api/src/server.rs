//! Servers: Huawei's `ServerDetail` (every property its `ListServersDetails`
//! and `ShowServer` definitions require, in the types the SDKs expect) and
//! our `x-ecsd` extension.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::status::{HostStatus, ResetState, ServerStatus};

/// `GET /v1/{project_id}/cloudservers/detail`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ListServersResponse {
    /// How many servers match the filters (all pages).
    pub count: u64,
    pub servers: Vec<ListedServer>,
}

/// A listed server, or — for an id asked by `server_id` that does not exist —
/// only the id and a fault (as Huawei answers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ListedServer {
    Detail(Box<ServerDetail>),
    Missing { id: String, fault: ServerFault },
}

impl ListedServer {
    pub fn detail(&self) -> Option<&ServerDetail> {
        match self {
            ListedServer::Detail(d) => Some(d),
            ListedServer::Missing { .. } => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServerFault {
    pub code: u16,
    pub message: String,
}

/// `GET /v1/{project_id}/cloudservers/{server_id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ShowServerResponse {
    pub server: ServerDetail,
}

/// Huawei's `ServerDetail`. What ecsd does not know is "", 0, false, [] or {}
/// so that every required property is present with its type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ServerDetail {
    pub id: String,
    pub name: String,
    pub description: String,
    pub status: ServerStatus,
    pub tenant_id: String,
    pub user_id: String,
    pub created: String,
    pub updated: String,
    #[serde(rename = "hostId")]
    pub host_id: String,
    pub host_status: HostStatus,
    pub locked: bool,
    pub tags: Vec<String>,
    pub sys_tags: Vec<ServerSystemTag>,
    pub enterprise_project_id: String,
    pub progress: i32,
    pub config_drive: String,
    #[serde(rename = "accessIPv4")]
    pub access_ipv4: String,
    #[serde(rename = "accessIPv6")]
    pub access_ipv6: String,
    pub auto_terminate_time: String,
    pub key_name: String,
    /// Network name → addresses; ecsd reports the agent's source address
    /// under `agent`.
    pub addresses: BTreeMap<String, Vec<ServerAddress>>,
    pub flavor: ServerFlavor,
    pub image: ServerImage,
    pub security_groups: Vec<ServerSecurityGroup>,
    /// `os_type` (Linux or Windows) and `charging_mode`.
    pub metadata: BTreeMap<String, String>,
    pub enclave_options: EnclaveOptions,
    pub spod_id: String,
    pub capacity_reservation_specification: CapacityReservationSpecification,
    pub capacity_reservation_id: String,
    #[serde(rename = "OS-EXT-STS:vm_state")]
    pub vm_state: String,
    #[serde(rename = "OS-EXT-STS:task_state")]
    pub task_state: String,
    #[serde(rename = "OS-EXT-STS:power_state")]
    pub power_state: i32,
    #[serde(rename = "OS-EXT-AZ:availability_zone")]
    pub availability_zone: String,
    #[serde(rename = "OS-SRV-USG:launched_at")]
    pub launched_at: String,
    #[serde(rename = "OS-SRV-USG:terminated_at")]
    pub terminated_at: String,
    #[serde(rename = "os-extended-volumes:volumes_attached")]
    pub volumes_attached: Vec<VolumeAttached>,
    #[serde(rename = "OS-EXT-SRV-ATTR:host")]
    pub host: String,
    #[serde(rename = "OS-EXT-SRV-ATTR:hostname")]
    pub hostname: String,
    #[serde(rename = "OS-EXT-SRV-ATTR:hypervisor_hostname")]
    pub hypervisor_hostname: String,
    #[serde(rename = "OS-EXT-SRV-ATTR:instance_name")]
    pub instance_name: String,
    #[serde(rename = "OS-EXT-SRV-ATTR:kernel_id")]
    pub kernel_id: String,
    #[serde(rename = "OS-EXT-SRV-ATTR:ramdisk_id")]
    pub ramdisk_id: String,
    #[serde(rename = "OS-EXT-SRV-ATTR:root_device_name")]
    pub root_device_name: String,
    #[serde(rename = "OS-EXT-SRV-ATTR:launch_index")]
    pub launch_index: i32,
    #[serde(rename = "OS-EXT-SRV-ATTR:reservation_id")]
    pub reservation_id: String,
    #[serde(rename = "OS-DCF:diskConfig")]
    pub disk_config: String,
    /// Ours (ignored by the Huawei SDKs): the agent and the last reset.
    #[serde(rename = "x-ecsd")]
    pub ecsd: EcsdServerExtension,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServerSystemTag {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServerAddress {
    /// "4" or "6".
    pub version: String,
    pub addr: String,
    #[serde(rename = "OS-EXT-IPS:type")]
    pub ip_type: String,
    #[serde(rename = "OS-EXT-IPS-MAC:mac_addr")]
    pub mac_addr: String,
    #[serde(rename = "OS-EXT-IPS:port_id")]
    pub port_id: String,
}

/// Sizes are strings in Huawei's definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServerFlavor {
    pub id: String,
    pub name: String,
    pub disk: String,
    pub vcpus: String,
    pub ram: String,
    pub gpus: Vec<serde_json::Value>,
    pub asic_accelerators: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServerImage {
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServerSecurityGroup {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VolumeAttached {
    pub id: String,
    pub delete_on_termination: String,
    pub device: String,
}

/// Huawei's `EnclaveOptions` (QingTian enclaves); never enabled here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EnclaveOptions {
    pub enabled: bool,
}

/// Huawei's `CapacityReservationSpecification`; ecsd has no capacity
/// reservations (`preference` is always `none`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CapacityReservationSpecification {
    pub id: String,
    pub preference: String,
}

impl Default for CapacityReservationSpecification {
    fn default() -> Self {
        CapacityReservationSpecification {
            id: String::new(),
            preference: "none".into(),
        }
    }
}

/// `x-ecsd`: what ecsd knows beyond Huawei's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EcsdServerExtension {
    pub agent: AgentInfo,
    pub last_reset: Option<LastReset>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AgentInfo {
    /// A plug-in has enrolled (its public key is known).
    pub enrolled: bool,
    pub version: Option<String>,
    pub last_seen: Option<String>,
    pub boot_id: Option<String>,
}

/// The newest reset request that targeted the server, and its state there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LastReset {
    pub request_id: String,
    pub state: ResetState,
}
