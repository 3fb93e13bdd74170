//! Huawei's own API definitions as the reference: a real ecsd with a
//! simulated fleet answers each of nine operations (and the three tag
//! operations) for real, and every
//! response body is validated against the response schema of that operation
//! in Huawei's API Explorer definition (vendored in `tests/huawei-definitions/`,
//! see its README.md): every required property present, with its type,
//! recursively (and enums, and the types of the optional properties sent).
//! Our request bodies are validated against the definitions' request schemas
//! too, and every URL is built from the definition's own path template.

mod common;

use std::time::Duration;

use common::*;
use ecs_api::{
    BatchResetResponse, JobResult, JobStatus, ListServersResponse, ResetPwdFlag,
    ResetPwdFlagResponse, ServerStatus, ShowJobResponse, ShowServerResponse,
};
use serde_json::{Value, json};

/// One operation of Huawei's API Explorer, as its vendored definition has it.
struct Op {
    name: &'static str,
    /// The whole definition (`definitions`, `paths`, ...).
    def: Value,
    /// `GET`, `PUT`, `POST`.
    method: String,
    /// The path template, e.g. `/v1/{project_id}/cloudservers/{server_id}`.
    path: String,
    /// The operation object under `paths` → path → method.
    op: Value,
}

impl Op {
    fn load(name: &'static str) -> Op {
        let file = format!(
            "{}/tests/huawei-definitions/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let def: Value = serde_json::from_str(
            &std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}")),
        )
        .unwrap();
        let paths = def["paths"].as_object().expect("paths");
        assert_eq!(paths.len(), 1, "{name}: one path expected");
        let (path, methods) = paths.iter().next().unwrap();
        let methods = methods.as_object().expect("methods");
        assert_eq!(methods.len(), 1, "{name}: one method expected");
        let (method, op) = methods.iter().next().unwrap();
        assert_eq!(op["operationId"], name, "{file}");
        Op {
            name,
            method: method.to_ascii_uppercase(),
            path: path.clone(),
            op: op.clone(),
            def,
        }
    }

    /// The operation's URL: its path template with these parameters.
    fn url(&self, params: &[(&str, &str)]) -> String {
        let mut url = self.path.clone();
        for (k, v) in params {
            url = url.replace(&format!("{{{k}}}"), v);
        }
        assert!(
            !url.contains('{'),
            "{}: unfilled parameter in {url}",
            self.name
        );
        url
    }

    /// A JSON Schema document for the schema at `schema` (a `$ref` into this
    /// definition's `definitions`).
    fn document(&self, schema: &Value) -> Value {
        let reference = schema["$ref"].as_str().unwrap_or_else(|| {
            panic!("{}: a schema without $ref: {schema}", self.name);
        });
        assert!(reference.starts_with("#/definitions/"), "{reference}");
        let mut definitions = self.def["definitions"].clone();
        allow_documented_nulls(&mut definitions);
        json!({"$ref": reference, "definitions": definitions})
    }

    /// The schema of the body answered with `status`; `None` when the
    /// definition declares that status without a body.
    fn response_schema(&self, status: u16) -> Option<Value> {
        let r = &self.op["responses"][status.to_string()];
        assert!(
            r.is_object(),
            "{}: Huawei defines no {status} response",
            self.name
        );
        r.get("schema").map(|s| self.document(s))
    }

    /// The schema of the request body.
    fn request_schema(&self) -> Value {
        let body = self.op["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["in"] == "body")
            .unwrap_or_else(|| panic!("{}: no body parameter", self.name));
        self.document(&body["schema"])
    }

    /// Calls the operation (its request body checked against Huawei's
    /// request schema first) and checks the answer: the status Huawei
    /// defines for success and a body valid against its schema.
    async fn call(&self, t: &TestServer, params: &[(&str, &str)], body: Option<Value>) -> Resp {
        if let Some(b) = &body {
            let errors = violations(&self.request_schema(), b, true);
            assert!(errors.is_empty(), "{} request: {errors:#?}", self.name);
        }
        let text = body.map(|b| b.to_string());
        let r = t
            .call(&self.method, &self.url(params), text.as_deref())
            .await;
        let ok: Vec<u16> = self.op["responses"]
            .as_object()
            .unwrap()
            .keys()
            .filter_map(|k| k.parse().ok())
            .filter(|s| (200..300).contains(s))
            .collect();
        assert_eq!(ok.len(), 1, "{}: one success status expected", self.name);
        assert_eq!(r.status, ok[0], "{}: {}", self.name, r.text);
        self.check(&r);
        r
    }

    /// Checks a successful answer against the definition.
    #[track_caller]
    fn check(&self, r: &Resp) {
        match self.response_schema(r.status) {
            Some(schema) => {
                let errors = violations(&schema, &r.value(), false);
                assert!(
                    errors.is_empty(),
                    "{} response violates Huawei's definition: {errors:#?}\n{}",
                    self.name,
                    r.text
                );
            }
            None => assert!(r.text.is_empty(), "{}: {}", self.name, r.text),
        }
    }
}

/// Where our contract documents Huawei answering other than its definition
/// says, the definition is widened for exactly that and nothing else.
///
/// ShowJob: the definition types `error_code` and `fail_reason` (of the job
/// and of each sub-job) as `string`, but its own description and example say
/// they are `null` once the job succeeded, and so does the contract
/// (/work/shared/spec/huawei-ecs-api.md, §3 "Batch start, stop and reboot,
/// and jobs", `GET /v1/{project_id}/jobs/{job_id}`: "`error_code`/`fail_reason`
/// are `null` on success").
fn allow_documented_nulls(definitions: &mut Value) {
    for object in ["ShowJobResponseBody", "SubJob"] {
        let Some(props) = definitions
            .get_mut(object)
            .and_then(|d| d.get_mut("properties"))
        else {
            continue;
        };
        for field in ["error_code", "fail_reason"] {
            assert_eq!(props[field]["type"], "string", "{object}.{field}");
            props[field]["type"] = json!(["string", "null"]);
        }
    }
}

/// Everything in `instance` that violates `schema` (JSON Schema draft 4, the
/// dialect of Swagger 2 definitions), one line each. `masked`: without the
/// offending values (request bodies hold passwords).
fn violations(schema: &Value, instance: &Value, masked: bool) -> Vec<String> {
    let validator =
        jsonschema::draft4::new(schema).expect("Huawei's definition compiles as JSON Schema");
    validator
        .iter_errors(instance)
        .map(|e| {
            if masked {
                format!("{}: {}", e.instance_path(), e.masked())
            } else {
                format!("{}: {e}", e.instance_path())
            }
        })
        .collect()
}

/// ShowJob until the job is SUCCESS or FAIL, checking every answer
/// (INIT and RUNNING ones too) against the definition.
async fn wait_job_checked(t: &TestServer, show_job: &Op, job: &str) -> ShowJobResponse {
    for _ in 0..400 {
        let r = show_job
            .call(t, &[("project_id", &t.project), ("job_id", job)], None)
            .await;
        let j: ShowJobResponse = r.json();
        if j.status.is_final() {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {job} never finished");
}

fn servers(ids: &[&str]) -> Value {
    ids.iter().map(|i| json!({"id": i})).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nine_operations_answer_as_huawei_defines_them() {
    let t = TestServer::start().await;
    let f = fleet(&t, 2).await;
    let list = f.list();
    let ids: Vec<&str> = list.iter().map(|s| s.server_id.as_str()).collect();
    let project = t.project.clone();
    let p = project.as_str();
    let (list_op, show, flag) = (
        Op::load("ListServersDetails"),
        Op::load("ShowServer"),
        Op::load("ShowResetPasswordFlag"),
    );
    let (batch_reset, single_reset) = (
        Op::load("BatchResetServersPassword"),
        Op::load("ResetServerPassword"),
    );
    let (reboot, start, stop, show_job) = (
        Op::load("BatchRebootServers"),
        Op::load("BatchStartServers"),
        Op::load("BatchStopServers"),
        Op::load("ShowJob"),
    );

    // ListServersDetails and ShowServer.
    let listed = list_op.call(&t, &[("project_id", p)], None).await;
    assert_eq!(
        listed.json::<ListServersResponse>().count,
        2,
        "{}",
        listed.text
    );
    let shown = show
        .call(&t, &[("project_id", p), ("server_id", ids[0])], None)
        .await;
    assert_eq!(shown.json::<ShowServerResponse>().server.id, ids[0]);

    // The check has teeth: without one required property, or with one of
    // the wrong type, the same answers are refused. (ListServersDetails'
    // ServerDetail requires spod_id & co.; ShowServer's does not.)
    let schema = list_op.response_schema(200).unwrap();
    let mut missing = listed.value();
    missing["servers"][1]
        .as_object_mut()
        .unwrap()
        .remove("spod_id");
    let errors = violations(&schema, &missing, false);
    assert!(
        errors.len() == 1 && errors[0].contains("spod_id"),
        "a missing spod_id went unnoticed: {errors:?}"
    );
    let mut wrong = listed.value();
    wrong["servers"][0]["enclave_options"]["enabled"] = json!("false");
    let errors = violations(&schema, &wrong, false);
    assert!(
        errors.len() == 1 && errors[0].starts_with("/servers/0/enclave_options/enabled"),
        "a string for a boolean went unnoticed: {errors:?}"
    );
    let schema = show.response_schema(200).unwrap();
    let mut missing = shown.value();
    missing["server"]["flavor"]
        .as_object_mut()
        .unwrap()
        .remove("vcpus");
    let errors = violations(&schema, &missing, false);
    assert!(
        errors.len() == 1 && errors[0].contains("vcpus"),
        "a missing flavor.vcpus went unnoticed: {errors:?}"
    );

    // ShowResetPasswordFlag.
    let r = flag
        .call(&t, &[("project_id", p), ("server_id", ids[0])], None)
        .await;
    assert_eq!(
        r.json::<ResetPwdFlagResponse>().resetpwd_flag,
        ResetPwdFlag::True
    );

    // BatchResetServersPassword and ResetServerPassword.
    let r = batch_reset
        .call(
            &t,
            &[("project_id", p)],
            Some(json!({"new_password": "Gx7!pLq2vR", "servers": servers(&ids)})),
        )
        .await;
    assert_eq!(r.json::<BatchResetResponse>().response.len(), 2);
    single_reset
        .call(
            &t,
            &[("project_id", p), ("server_id", ids[0])],
            Some(json!({"reset-password": {"new_password": "Hy8@qMr3wS"}})),
        )
        .await;

    // BatchStopServers, then a stopped server listed and shown.
    let r = stop
        .call(
            &t,
            &[("project_id", p)],
            Some(json!({"os-stop": {"servers": servers(&ids[1..]), "type": "SOFT"}})),
        )
        .await;
    let job = wait_job_checked(&t, &show_job, &r.json::<JobResult>().job_id).await;
    assert_eq!(job.status, JobStatus::Success, "{job:?}");
    let r = show
        .call(&t, &[("project_id", p), ("server_id", ids[1])], None)
        .await;
    assert_eq!(
        r.json::<ShowServerResponse>().server.status,
        ServerStatus::Shutoff
    );
    list_op.call(&t, &[("project_id", p)], None).await;

    // BatchStartServers.
    let r = start
        .call(
            &t,
            &[("project_id", p)],
            Some(json!({"os-start": {"servers": servers(&ids[1..])}})),
        )
        .await;
    let job = wait_job_checked(&t, &show_job, &r.json::<JobResult>().job_id).await;
    assert_eq!(job.status, JobStatus::Success, "{job:?}");

    // BatchRebootServers: both servers restart and apply their resets.
    let r = reboot
        .call(
            &t,
            &[("project_id", p)],
            Some(json!({"reboot": {"servers": servers(&ids), "type": "SOFT"}})),
        )
        .await;
    let job = wait_job_checked(&t, &show_job, &r.json::<JobResult>().job_id).await;
    assert_eq!(job.status, JobStatus::Success, "{job:?}");
    assert_eq!(job.entities.sub_jobs_total, 2);

    // After the reboot: each server shown again (last reset APPLIED or not).
    for id in &ids {
        show.call(&t, &[("project_id", p), ("server_id", id)], None)
            .await;
    }
    f.stop();
}

/// The checker itself, on Huawei's own ShowJob example: valid as given
/// (with the documented nulls), refused without a required property or with
/// a property of the wrong type, in the job and in a sub-job.
#[test]
fn the_checker_refuses_a_missing_property_and_a_wrong_type() {
    let show_job = Op::load("ShowJob");
    let schema = show_job.response_schema(200).unwrap();
    let example = show_job.op["responses"]["200"]["examples"]["application/json"].clone();
    assert_eq!(example["error_code"], Value::Null);
    assert_eq!(violations(&schema, &example, false), Vec::<String>::new());

    let mut missing = example.clone();
    missing.as_object_mut().unwrap().remove("job_id");
    let errors = violations(&schema, &missing, false);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("job_id"), "{errors:?}");

    let mut wrong = example.clone();
    wrong["entities"]["sub_jobs_total"] = json!("1");
    let errors = violations(&schema, &wrong, false);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("/entities/sub_jobs_total"),
        "{errors:?}"
    );

    let mut wrong = example.clone();
    wrong["entities"]["sub_jobs"][0]["status"] = json!(1);
    assert!(!violations(&schema, &wrong, false).is_empty());

    // The null allowance is for error_code and fail_reason only.
    let mut wrong = example;
    wrong["job_type"] = Value::Null;
    assert!(!violations(&schema, &wrong, false).is_empty());
}

/// Server tags: Huawei's BatchCreateServerTags, BatchDeleteServerTags and
/// ShowServerTags, requests and answers checked against their definitions.
#[tokio::test]
async fn the_tag_operations_answer_as_huawei_defines_them() {
    let t = TestServer::start().await;
    let (id, _) = t
        .server(&t.project, "tagged", ecs_policy::OsType::Linux, true)
        .await;
    let params = [
        ("project_id", t.project.as_str()),
        ("server_id", id.as_str()),
    ];
    let (create, delete, show) = (
        Op::load("BatchCreateServerTags"),
        Op::load("BatchDeleteServerTags"),
        Op::load("ShowServerTags"),
    );
    let r = create
        .call(
            &t,
            &params,
            Some(json!({"action": "create", "tags": [{"key": "env", "value": "staging"}, {"key": "team"}]})),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let r = show.call(&t, &params, None).await;
    assert_eq!(
        r.value(),
        json!({"tags": [{"key": "env", "value": "staging"}, {"key": "team", "value": ""}]})
    );
    delete
        .call(
            &t,
            &params,
            Some(json!({"action": "delete", "tags": [{"key": "team"}]})),
        )
        .await;
    let r = show.call(&t, &params, None).await;
    assert_eq!(
        r.value(),
        json!({"tags": [{"key": "env", "value": "staging"}]})
    );
}
