"""Coding environment: CodeContests / MBPP / HumanEval problems judged in a subprocess sandbox."""

from leafe_jax.envs.coding.env import CODING_TEMPLATE, CodingEnv, extract_code, parse_action
from leafe_jax.envs.coding.judging import TestResult, Verdict, judge, outputs_match
from leafe_jax.envs.coding.problems import Problem, ProblemFormatError, TestCase, load_problems
from leafe_jax.envs.coding.sandbox import Job, Limits, RunResult, Sandbox

__all__ = [
    "CODING_TEMPLATE",
    "CodingEnv",
    "Job",
    "Limits",
    "Problem",
    "ProblemFormatError",
    "RunResult",
    "Sandbox",
    "TestCase",
    "TestResult",
    "Verdict",
    "extract_code",
    "judge",
    "load_problems",
    "outputs_match",
    "parse_action",
]
