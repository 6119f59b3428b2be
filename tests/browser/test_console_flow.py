"""The whole own-data flow in a real browser, with real agents on CSV exports: sign in,
register institutions, hand out tokens, set a study up with the schema built from a header
line, invite each data owner (who sets a password on the link and approves), agree the
scaling through the agents, launch a job checked against the sites' policies, watch its
rounds complete on the live page, download the bundle; and what an observer and a data owner
must not be able to do."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from browser_support import Stack, screenshot
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait

from deploy.local.example_files import write_example_files
from federation.data import load_builtin

pytestmark = pytest.mark.browser

# Long names without spaces to break at: the pages must still fit a narrow window.
SITES = (
    "Hospital Aurora Universitätsklinikum-Schleswig-Holstein-Campus-Lübeck-Kinderklinik",
    "Hospital Borealis Centre-Hospitalier-Universitaire-de-Saint-Étienne-Hôpital-Nord",
)
STUDY = "Breast cancer, browser test: Mammographie-Screening-Programm-Nord-West-Kohorte-2026"
ROUNDS = 3


def by_testid(value: str) -> tuple[str, str]:
    return By.CSS_SELECTOR, f'[data-testid="{value}"]'


def wait_for(driver: WebDriver, locator: tuple[str, str], timeout: float = 20):  # type: ignore[no-untyped-def]
    return WebDriverWait(driver, timeout).until(expected_conditions.presence_of_element_located(locator))


def sign_in(driver: WebDriver, stack: Stack, username: str, password: str) -> None:
    driver.delete_all_cookies()
    driver.get(f"{stack.url}/login/")
    driver.find_element(By.ID, "id_username").send_keys(username)
    driver.find_element(By.ID, "id_password").send_keys(password)
    driver.find_element(*by_testid("sign-in")).click()
    wait_for(driver, by_testid("user-role"))


def fill(driver: WebDriver, field_id: str, value: str) -> None:
    """Set a field's value directly (long JSON would be slow to type)."""
    element = driver.find_element(By.ID, field_id)
    driver.execute_script("arguments[0].value = arguments[1];", element, value)


def post_from_page(driver: WebDriver, path: str) -> int:
    """A same-origin POST with the page's CSRF token, as a forged button would send it."""
    script = """
        const done = arguments[arguments.length - 1];
        const token = (document.cookie.match(/csrftoken=([^;]+)/) || [])[1] || "";
        fetch(arguments[0], {method: "POST", headers: {"X-CSRFToken": token}, credentials: "same-origin"})
            .then(response => done(response.status));
    """
    return int(driver.execute_async_script(script, path))


@pytest.fixture(scope="module")
def people(stack: Stack) -> dict[str, str]:
    return {
        "carol": stack.create_user("carol", "coordinator"),
        "oscar": stack.create_user("oscar", "observer"),
    }


def register_sites(driver: WebDriver, stack: Stack) -> dict[str, str]:
    """Register the institutions and create one token each; returns name -> token."""
    tokens = {}
    for name in SITES:
        driver.get(f"{stack.url}/institutions/")
        driver.find_element(By.ID, "id_name").send_keys(name)
        driver.find_element(*by_testid("register-institution")).click()
        wait_for(driver, by_testid("create-token")).click()  # registering opens the new institution
        tokens[name] = wait_for(driver, by_testid("token-value")).text.strip()
        if name == SITES[0]:
            screenshot(driver, "institution-token")
        driver.refresh()  # shown once: a reload no longer shows it
        assert tokens[name] not in driver.page_source
    return tokens


def enroll_agents(stack: Stack, tokens: dict[str, str]) -> list[object]:
    """Each site's agent on its own CSV export (Hospital C's holds a unit the other lacks)."""
    exports = write_example_files(stack.data_dir / "exports")
    sites = []
    for index, (name, export) in enumerate(zip(SITES, (exports[0], exports[2]), strict=True)):
        folder = stack.data_dir / f"site-{index}"
        folder.mkdir()
        shutil.copyfile(export, folder / "data.csv")
        (folder / "agent.toml").write_text(
            f'server_url = "{stack.url}"\ncredential_file = "credential.json"\nstate_dir = "state"\n'
            'poll_wait_seconds = 20\n\n[data]\npath = "data.csv"\n\n[policy]\napproved_studies = ["*"]\n'
        )
        site = stack.runner.Site(name=name, folder=folder, rows=np.arange(0))
        stack.runner.run_agent_command(site, stack.env, "enroll", f"--token={tokens[name]}")
        sites.append(site)
    return sites


def create_study(driver: WebDriver, stack: Stack) -> str:
    driver.get(f"{stack.url}/studies/new/")
    driver.find_element(By.ID, "id_name").send_keys(STUDY)
    for checkbox in driver.find_elements(By.CSS_SELECTOR, 'input[name="institutions"]'):
        checkbox.click()
    # An error first: a schema that is not JSON is explained next to its field.
    fill(driver, "id_data_schema", "{not json")
    driver.find_element(*by_testid("create-study")).click()
    assert wait_for(driver, by_testid("error-data_schema")).text
    screenshot(driver, "study-form-error")
    # The schema from the export's header line, through the typed editor (no JSON typed).
    header = (stack.data_dir / "exports" / "hospital-a" / "data.csv").read_text().splitlines()[0]
    fill(driver, "schema-header", header)
    driver.find_element(*by_testid("schema-build")).click()
    identifier = driver.find_element(By.CSS_SELECTOR, 'tr[data-column="patient"] select')
    assert Select(identifier).first_selected_option.get_attribute("value") == "skip"  # left out
    Select(
        driver.find_element(By.CSS_SELECTOR, 'tr[data-column="smoker"] td:nth-child(3) select')
    ).select_by_value("boolean")
    Select(
        driver.find_element(By.CSS_SELECTOR, 'tr[data-column="unit"] td:nth-child(3) select')
    ).select_by_value("categorical")
    driver.find_element(By.CSS_SELECTOR, 'tr[data-column="unit"] input').send_keys(
        "ward 1, ward 2, day clinic"
    )
    classes = driver.find_element(*by_testid("schema-classes"))
    classes.clear()
    classes.send_keys("benign, malignant")  # typed: each keystroke rewrites the JSON
    built = json.loads(driver.find_element(By.ID, "id_data_schema").get_attribute("value"))
    measurements = [{"name": name, "kind": "numeric"} for name in load_builtin("breast_cancer").feature_names]
    assert built == {
        "features": [
            *measurements,
            {"name": "smoker", "kind": "boolean"},
            {"name": "unit", "kind": "categorical", "categories": ["ward 1", "ward 2", "day clinic"]},
        ],
        "label": "diagnosis",
        "task": "binary",
        "classes": ["benign", "malignant"],
    }
    assert "34 input features" in driver.find_element(*by_testid("derived-shape")).text
    screenshot(driver, "schema-builder")
    # The form's default scaling: agreed through the agents, from the study's page.
    assert (
        Select(driver.find_element(By.ID, "id_scaling")).first_selected_option.get_attribute("value")
        == "agents"
    )
    for checkbox in driver.find_elements(By.CSS_SELECTOR, 'input[name="institutions"]'):
        if not checkbox.is_selected():
            checkbox.click()
    driver.find_element(*by_testid("create-study")).click()
    wait_for(driver, by_testid("participant-row"))
    return driver.current_url


def invite(driver: WebDriver, stack: Stack, username: str, institution: str) -> str:
    """As the coordinator: the one-time link of a data owner's invitation."""
    driver.get(f"{stack.url}/people/")
    driver.find_element(By.ID, "id_username").send_keys(username)
    Select(driver.find_element(By.ID, "id_role")).select_by_value("data_owner")
    Select(driver.find_element(By.ID, "id_institution")).select_by_visible_text(institution)
    driver.find_element(*by_testid("invite")).click()
    return str(wait_for(driver, by_testid("invitation-link")).text.strip())


def approve_as_data_owners(driver: WebDriver, stack: Stack, study_url: str, coordinator: str) -> None:
    """Each data owner is invited, sets a password on the link, signs in and approves."""
    for index, name in enumerate(SITES):
        username, password = f"owner{index}", f"correct horse battery staple {index}"
        sign_in(driver, stack, "carol", coordinator)
        link = invite(driver, stack, username, name)
        driver.delete_all_cookies()  # the invited person has no account yet
        driver.get(link)
        driver.find_element(By.ID, "id_password").send_keys(password)
        driver.find_element(By.ID, "id_password_again").send_keys(password)
        driver.find_element(*by_testid("accept-invitation")).click()
        wait_for(driver, by_testid("sign-in"))
        sign_in(driver, stack, username, password)
        driver.get(study_url)
        wait_for(driver, by_testid("approve-button")).click()
        wait_for(driver, by_testid("message"))
        other = SITES[1 - index]
        driver.get(f"{stack.url}/institutions/")
        assert other not in driver.page_source  # a data owner sees only their own institution
        driver.get(link)
        assert "This link no longer works" in driver.page_source  # used once
    screenshot(driver, "study-approved")


def agree_scaling(driver: WebDriver, study_url: str, timeout: float = 60) -> None:
    """One button asks the running agents for their sums; the page refreshes until all answered."""
    driver.get(study_url)
    wait_for(driver, by_testid("agree-scaling")).click()
    deadline = time.monotonic() + timeout
    script = (
        "const e = document.querySelector('[data-testid=\"agreement-state\"]'); return e && e.dataset.state;"
    )
    while time.monotonic() < deadline:
        state = driver.execute_script(script)
        if state == "complete":
            break
        assert state in {None, "open"}, f"the agreement ended {state}"
        time.sleep(0.5)
    else:
        raise AssertionError("the sites' agents did not agree the scaling in time")
    answers = [
        row.text for row in driver.find_elements(By.CSS_SELECTOR, '[data-testid="agreement-sites"] tbody tr')
    ]
    assert len(answers) == len(SITES)
    assert all("Answered" in answer for answer in answers), answers
    # 30 measurements, smoker and four units: the agreement added Hospital C's hospice.
    assert "Agreed: 35 features" in driver.find_element(*by_testid("scaling-result")).text
    screenshot(driver, "scaling-agreed")


def launch_job(driver: WebDriver, stack: Stack, study_url: str) -> str:
    driver.get(study_url)
    for field_id, value in (("id_num_rounds", str(ROUNDS)), ("id_min_updates", str(len(SITES)))):
        element = driver.find_element(By.ID, field_id)
        element.clear()
        element.send_keys(value)
    driver.find_element(*by_testid("create-job")).click()
    wait_for(driver, by_testid("start-button"))
    assert driver.find_elements(*by_testid("launch-warning")) == []  # no site's policy refuses it
    # Before any round, the charts' axes run from 0 to 1, not Chart.js's padded -0.2 to 1.2.
    assert chart_axes(driver) == {name: [0, 1] for name in CHARTS}
    driver.find_element(*by_testid("start-button")).click()
    wait_for(driver, by_testid("message"))
    return driver.current_url


CHARTS = ("chart-quality", "chart-loss", "chart-sites")


def overflowing(driver: WebDriver) -> list[str]:
    """The elements that stick out past the window's right edge (tables scroll in their own box)."""
    script = """
        const width = document.documentElement.clientWidth;
        if (document.documentElement.scrollWidth <= width) { return []; }
        return Array.from(document.querySelectorAll("body *"))
            .filter(e => e.getBoundingClientRect().right > width + 1 && !e.closest(".table-wrap"))
            .map(e => `${e.tagName.toLowerCase()}.${e.className} ${e.textContent.trim().slice(0, 40)}`);
    """
    return driver.execute_script(script)  # type: ignore[no-any-return]


def chart_axes(driver: WebDriver) -> dict[str, list[float]]:
    script = """
        return Object.fromEntries(arguments[0].map(id => {
            const axis = Chart.getChart(id).scales.y;
            return [id, [axis.min, axis.max]];
        }));
    """
    return driver.execute_script(script, list(CHARTS))  # type: ignore[no-any-return]


def chart_tensions(driver: WebDriver) -> set[float]:
    script = "return arguments[0].flatMap(id => Chart.getChart(id).data.datasets.map(set => set.tension));"
    return set(driver.execute_script(script, list(CHARTS)))


def watch_until_completed(driver: WebDriver, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # Read through the DOM each time: the page replaces the element as it updates.
        state = driver.execute_script(
            "const e = document.querySelector('[data-testid=\"job-state\"]'); return e && e.dataset.state;"
        )
        if state == "completed":
            return
        assert state in {"running", "draft"}, f"the job ended {state}"
        time.sleep(1)  # the page updates itself; no reload
    raise AssertionError("the job did not complete on the live page in time")


def evaluate_across_sites(driver: WebDriver, stack: Stack, study_url: str, coordinator: str) -> None:
    """The coordinator asks every site's agent to score each model version of the job on its
    held-out rows; each data owner approves on the query's page; the page then shows the
    versions side by side, combined exactly, per site, and the reliability curves."""
    driver.get(f"{study_url}queries/")
    Select(wait_for(driver, (By.ID, "id_kind"))).select_by_value("evaluation")
    boxes = driver.find_elements(By.CSS_SELECTOR, '#field-versions input[type="checkbox"]')
    assert len(boxes) == ROUNDS + 1  # the initial model and one version per round
    for box in boxes:
        box.click()
    driver.find_element(*by_testid("ask-query")).click()
    wait_for(driver, by_testid("query-title"))
    query_url = driver.current_url
    for index in range(len(SITES)):
        sign_in(driver, stack, f"owner{index}", f"correct horse battery staple {index}")
        driver.get(query_url)
        approve = driver.find_elements(*by_testid("approve-query"))
        assert len(approve) == 1  # only on its own institution's row
        approve[0].click()
        wait_for(driver, by_testid("message"))
    sign_in(driver, stack, "carol", coordinator)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        driver.get(query_url)
        state = wait_for(driver, by_testid("query-state")).get_attribute("data-state")
        if state == "complete":
            break
        assert state == "open", f"the query ended {state}: {driver.page_source[:2000]}"
        time.sleep(1)
    else:
        raise AssertionError("the agents did not answer the evaluation query in time")
    tables = driver.find_elements(*by_testid("result-table"))
    assert len(tables) == 1 + ROUNDS + 1  # the versions side by side, then one table per version
    comparison = tables[0].find_elements(By.CSS_SELECTOR, "tbody tr")
    assert len(comparison) == ROUNDS + 1
    assert "Combined (exact)" in tables[-1].text
    assert all(site in tables[-1].text for site in SITES)
    assert driver.execute_script("return Chart.getChart('query-chart').data.datasets.length") == ROUNDS + 2
    screenshot(driver, "query-evaluation")


def downloaded_file(directory: Path, timeout: float = 20) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [p for p in directory.iterdir() if not p.name.endswith(".crdownload")]
        if done:
            return done[0]
        time.sleep(0.2)
    raise AssertionError("no download arrived")


def test_a_coordinator_runs_a_federation_from_the_browser(stack: Stack, browser: WebDriver, people) -> None:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    sign_in(browser, stack, "carol", people["carol"])
    screenshot(browser, "overview-empty")
    sites = enroll_agents(stack, register_sites(browser, stack))
    study_url = create_study(browser, stack)
    sign_in(browser, stack, "carol", people["carol"])
    browser.get(study_url)
    start_refused = len(browser.find_elements(*by_testid("approve-button")))
    assert start_refused == 0  # a coordinator never approves for a site
    approve_as_data_owners(browser, stack, study_url, people["carol"])
    sign_in(browser, stack, "carol", people["carol"])
    for site in sites:
        stack.processes.start(  # type: ignore[attr-defined]
            f"agent-{site.folder.name}",
            stack.runner.agent_command("run", "--config", str(site.config), "--exit-when-idle", "120"),
            stack.env,
            cwd=site.folder,
        )
    agree_scaling(browser, study_url)
    job_url = launch_job(browser, stack, study_url)
    watch_until_completed(browser)
    live = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(location.pathname.replace(/\\/$/, '') + '/live.json').then(r => r.json()).then(done);"
    )
    assert live["job"]["state"] == "completed"
    assert not any("started" in m.text for m in browser.find_elements(*by_testid("message")))
    assert chart_tensions(browser) == {0}  # straight lines between measured rounds
    final = live["models"][-1]["metrics"]  # the sites' evaluation of the final model
    assert final["accuracy"] > 0.9
    rounds = browser.find_elements(*by_testid("round-row"))
    assert len(rounds) >= ROUNDS
    assert browser.find_elements(*by_testid("model-row"))
    screenshot(browser, "job-completed")
    browser.set_window_size(800, 1024)
    pages = ("/studies/new/", "/institutions/", "/jobs/")
    for url in (job_url, study_url, *(f"{stack.url}{path}" for path in pages)):
        browser.get(url)
        wait_for(browser, (By.TAG_NAME, "footer"))
        assert overflowing(browser) == [], url  # nothing makes the page scroll sideways
    browser.get(job_url)
    wait_for(browser, by_testid("job-state"))
    screenshot(browser, "job-completed-tablet", width=800)
    browser.find_elements(*by_testid("download-bundle"))[-1].click()
    bundle = zipfile.ZipFile(downloaded_file(Path(browser.download_dir)))  # type: ignore[attr-defined]
    model = json.loads(bundle.read("model.json"))
    assert model["data_schema"]["features"][-1]["categories"][-1] == "hospice"  # the agreed schema
    assert len(model["feature_scaling"]["mean"]) == 35
    blob = bundle.read("model.safetensors")
    digest = hashlib.sha256(blob).hexdigest()
    assert digest[:12] in browser.page_source  # the weights are the version the page lists
    evaluate_across_sites(browser, stack, study_url, people["carol"])
    print(json.dumps({"console_flow_seconds": round(time.monotonic() - started, 1)}))
    for page in ("", "institutions/", "studies/", "jobs/", "audit/"):
        browser.get(f"{stack.url}/{page}")
        screenshot(browser, f"page-{page.strip('/') or 'overview'}")
    assert "job.completed" in browser.page_source
    stack.processes.stop([f"agent-{site.folder.name}" for site in sites])  # type: ignore[attr-defined]
    _observer_cannot_change_anything(browser, stack, people, job_url)


def _observer_cannot_change_anything(browser: WebDriver, stack: Stack, people, job_url: str) -> None:  # type: ignore[no-untyped-def]
    sign_in(browser, stack, "oscar", people["oscar"])
    browser.get(job_url)
    wait_for(browser, by_testid("job-state"))
    visible = [
        button
        for name in ("start-button", "pause-button", "resume-button", "cancel-button")
        for button in browser.find_elements(*by_testid(name))
        if button.is_displayed()
    ]
    assert visible == []
    job_path = job_url.removeprefix(stack.url).rstrip("/")
    assert post_from_page(browser, f"{job_path}/cancel/") == 403
    browser.get(f"{stack.url}/institutions/")
    assert browser.find_elements(By.ID, "id_name") == []  # no register form
    screenshot(browser, "observer-institutions")
    assert post_from_page(browser, "/institutions/") == 403
