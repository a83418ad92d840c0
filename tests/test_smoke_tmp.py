from dbos import DBOS, SetWorkflowID
from pydantic_ai import Agent
from pydantic_ai.models.test import TestModel
from dbos_pydantic_ai import DBOSAgent

def test_sync(agent_name, launch_dbos):
    durable = DBOSAgent(Agent(TestModel(), name=agent_name))
    launch_dbos()
    with SetWorkflowID("w1"):
        assert durable.run_sync("hi").output
    assert [s["function_name"] for s in DBOS.list_workflow_steps("w1")] == [f"{agent_name}__model.request"]

async def test_async(agent_name, launch_dbos):
    durable = DBOSAgent(Agent(TestModel(), name=agent_name))
    launch_dbos()
    with SetWorkflowID("w1"):
        assert (await durable.run("hi")).output
    steps = await DBOS.list_workflow_steps_async("w1")
    assert [s["function_name"] for s in steps] == [f"{agent_name}__model.request"]
